#ifndef MINITORCH_H
#define MINITORCH_H
float mt_dot(const float *a, const float *b, int n);
const char *mt_arch_list(void);
/* Lowest compute capability whose kernels the compiler path (Inductor) accepts. */
int mt_min_compiler_capability(void);
#endif
