"""A stand-in for moefuse._tma (which needs a driver) in CPU tests of the GEMM launchers: each
descriptor is a tuple recording what was asked for, its kind first and the K box (tile_k) last
where it has one."""


class FakeTma:
    @staticmethod
    def tile_desc(matrix, box_rows, box_cols):
        return ("tile", box_rows, box_cols)

    @staticmethod
    def gate_up_groups_desc(w1, groups, group, box_cols, interleaved):
        return ("gate_up", groups, group, box_cols)

    @staticmethod
    def weights_desc(w, box_n, tile_k, halves, layout):
        return ("weights", box_n, halves, tile_k)

    @staticmethod
    def scale_desc(scales, box_rows, groups):
        return ("scale", scales.shape, box_rows, groups)
