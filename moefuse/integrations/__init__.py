"""Bridges from frameworks to moefuse; each submodule imports its framework (PyTorch is not a
dependency of moefuse). `moefuse.integrations.torch`: the operator `moefuse::experts` for torch
tensors, torch.compile and CUDA graphs; `moefuse.integrations.transformers`: the experts
implementation "moefuse" of transformers' MoE models (docs/INTEGRATIONS.md)."""
