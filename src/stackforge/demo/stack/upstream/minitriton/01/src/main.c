#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "mllvm.h"

/* Upstream always asks for evict_last, which ptxas refuses below sm_70. */
static int use_evict_last(int arch) { (void)arch; return 1; }

int main(void) {
    char list[] = ARCH_LIST, line[128];
    for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
        int arch = atoi(tok) * 10 + atoi(strchr(tok, '.') ? strchr(tok, '.') + 1 : "0");
        mllvm_lower_load(arch, use_evict_last(arch), line, sizeof line);
        printf("sm_%d: %s\n", arch, line);
    }
    return 0;
}
