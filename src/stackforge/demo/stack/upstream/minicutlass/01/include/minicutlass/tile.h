#ifndef MINICUTLASS_TILE_H
#define MINICUTLASS_TILE_H
/* Header-only templates library (like CUTLASS): one tile-size rule. */
#define MINICUTLASS_TILE(smem_bytes) ((smem_bytes) / 1024 / 4)
#endif
