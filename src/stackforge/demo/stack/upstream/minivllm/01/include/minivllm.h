#ifndef MINIVLLM_H
#define MINIVLLM_H
float mv_attention(int n);
int mv_tile(void);
#endif
