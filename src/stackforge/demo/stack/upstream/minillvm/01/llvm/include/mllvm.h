#ifndef MLLVM_H
#define MLLVM_H
/* Lower one load to PTX-like text for a compute capability (60, 61, 70...). */
int mllvm_lower_load(int arch, int evict_last, char *out, int size);
#endif
