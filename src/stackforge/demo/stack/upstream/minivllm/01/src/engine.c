#include <minicutlass/tile.h>
#include "minitorch.h"
#include "minivllm.h"

float mv_attention(int n) {
    float q[64], k[64];
    for (int i = 0; i < n && i < 64; ++i) { q[i] = 1.0f; k[i] = 0.5f; }
    return mt_dot(q, k, n < 64 ? n : 64);
}

int mv_tile(void) { return MINICUTLASS_TILE(98304); }
