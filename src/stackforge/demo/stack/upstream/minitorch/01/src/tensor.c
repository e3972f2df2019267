#include "minitorch.h"

float mt_dot(const float *a, const float *b, int n) {
    float acc = 0.0f;
    for (int i = 0; i < n; ++i) acc += a[i] * b[i];
    return acc;
}

const char *mt_arch_list(void) { return ARCH_LIST; }

int mt_min_compiler_capability(void) { return 70; }
