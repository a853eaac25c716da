/* Small portable helpers shared by the Cython kernels. */
#ifndef WB_COMMON_H
#define WB_COMMON_H

#ifdef _OPENMP
#include <omp.h>
static inline int wb_openmp_enabled(void) { return 1; }
static inline int wb_omp_max_threads(void) { return omp_get_max_threads(); }
#else
static inline int wb_openmp_enabled(void) { return 0; }
static inline int wb_omp_max_threads(void) { return 1; }
#endif

#endif
