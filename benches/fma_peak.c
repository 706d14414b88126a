// The FMA peak of one core, for the "distance from peak" figures in
// docs/benchmarks.md: 24 independent 512-bit (and 12 256-bit) multiply-add
// chains, best of five runs each.
//
//     gcc -O2 -mavx512f -mfma -o /tmp/fma_peak benches/fma_peak.c && /tmp/fma_peak
//
// (On a CPU without AVX-512, build with -mavx2 -mfma -DNO_AVX512.)
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(){
  const long iters=200000000L/8;
  double best512=0;
#ifndef NO_AVX512
  __m512 a[24]; __m512 x=_mm512_set1_ps(1.0000001f), y=_mm512_set1_ps(0.9999999f);
  for(int i=0;i<24;i++) a[i]=_mm512_set1_ps((float)i);
  for(int r=0;r<5;r++){
    double t=now();
    for(long i=0;i<iters;i++){
      #pragma GCC unroll 24
      for(int j=0;j<24;j++) a[j]=_mm512_fmadd_ps(a[j],x,y);
    }
    double g=iters*24.0*16*2/(now()-t)/1e9; if(g>best512)best512=g;
  }
#endif
  __m256 b[12]; __m256 x2=_mm256_set1_ps(1.0000001f), y2=_mm256_set1_ps(0.9999999f);
  for(int i=0;i<12;i++) b[i]=_mm256_set1_ps((float)i);
  double best256=0;
  for(int r=0;r<5;r++){
    double t=now();
    for(long i=0;i<iters*2;i++){
      #pragma GCC unroll 12
      for(int j=0;j<12;j++) b[j]=_mm256_fmadd_ps(b[j],x2,y2);
    }
    double g=iters*2*12.0*8*2/(now()-t)/1e9; if(g>best256)best256=g;
  }
  float s=0; float o[16];
#ifndef NO_AVX512
  for(int i=0;i<24;i++){_mm512_storeu_ps(o,a[i]); s+=o[0];}
#endif
  for(int i=0;i<12;i++){_mm256_storeu_ps(o,b[i]); s+=o[0];}
  printf("one core: AVX-512 %.1f GFLOP/s, AVX2 %.1f GFLOP/s (checksum %g)\n", best512, best256, s);
}
