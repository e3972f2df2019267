#include <stdio.h>
#include "mllvm.h"

int mllvm_lower_load(int arch, int evict_last, char *out, int size) {
    return snprintf(out, (size_t)size, "ld.global%s.b32 // .target sm_%d",
                    evict_last ? ".L1::evict_last" : "", arch);
}
