/* Small portable helpers shared by the Cython kernels and the engine. */
#ifndef WB_COMMON_H
#define WB_COMMON_H

#ifdef _OPENMP
#include <omp.h>
static inline int wb_openmp_enabled(void) { return 1; }
static inline int wb_omp_max_threads(void) { return omp_get_max_threads(); }
static inline int wb_thread_id(void) { return omp_get_thread_num(); }
static inline int wb_thread_count(void) { return omp_get_num_threads(); }
#define WB_BARRIER() _Pragma("omp barrier")
#else
static inline int wb_openmp_enabled(void) { return 0; }
static inline int wb_omp_max_threads(void) { return 1; }
static inline int wb_thread_id(void) { return 0; }
static inline int wb_thread_count(void) { return 1; }
#define WB_BARRIER() do { } while (0)
#endif

#endif
