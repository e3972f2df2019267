#include <stdio.h>
#include "minitorch.h"
#include "minivllm.h"

int main(void) {
    printf("mini-vllm: archs %s, tile %d, attention(8) = %.1f, compiler path from sm_%d\n",
           mt_arch_list(), mv_tile(), mv_attention(8), mt_min_compiler_capability());
    return 0;
}
