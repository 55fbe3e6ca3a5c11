/*
 * Drivers that fail mid-scan, for the crash-isolation tests (tests/drivers/isolation_test.cpp):
 * the C example, which at view FAULT_VIEW (default 40) does, by FAULT_KIND:
 *   1 crash  dereferences NULL inside next_view (SIGSEGV); run in process, it ends the agent
 *   2 stall  stops delivering views and ignores abort() (it sleeps, for at most 10 minutes); with
 *            CTAGENT_FAULT_STALL_FILE set in its environment it first creates that file, so a test
 *            can tell that the stall has begun (not only that the views before it were stored)
 *   3 error  returns CTAGENT_E_HARDWARE with a last_error text
 * Views before FAULT_VIEW are those of the C example, so what reached the spool can be checked.
 */
#define _POSIX_C_SOURCE 200809L

#include <fcntl.h>
#include <stddef.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "ctagent_driver.h"

#ifndef FAULT_VIEW
#define FAULT_VIEW 40
#endif

#if FAULT_KIND == 1
#define EXAMPLE_NAME "fault_crash"
#elif FAULT_KIND == 2
#define EXAMPLE_NAME "fault_stall"
#elif FAULT_KIND == 3
#define EXAMPLE_NAME "fault_error"
#else
#error "define FAULT_KIND to 1 (crash), 2 (stall) or 3 (error)"
#endif

static ctagent_status fault_before_view(ctagent_driver* d, uint64_t v);
#define EXAMPLE_BEFORE_VIEW(d, v) fault_before_view((d), (v))

#include "../c_example/c_example_driver.c"

/* The sanitizer build must see the real SIGSEGV, not UBSan's report of the null store. */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((no_sanitize("undefined")))
#endif
static ctagent_status fault_before_view(ctagent_driver* d, uint64_t v) {
  if (v != FAULT_VIEW) return CTAGENT_OK;
#if FAULT_KIND == 1
  (void)d;
  /* Both volatile: the compiler can neither see that the pointer is NULL (and trap instead) nor
   * drop the store (GCC 12 at -O2/-O3 deleted a plain int store through it: no crash). */
  volatile int* volatile nowhere = NULL;
  *nowhere = 42;
  return CTAGENT_E_INTERNAL;
#elif FAULT_KIND == 2
  (void)d;
  const char* stall_file = getenv("CTAGENT_FAULT_STALL_FILE");
  if (stall_file != NULL && stall_file[0] != '\0') {
    const int fd = open(stall_file, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0) close(fd);
  }
  for (int i = 0; i < 600; ++i) { /* bounded: 10 minutes of 1 s naps; abort() is ignored */
    struct timespec nap = {1, 0};
    nanosleep(&nap, NULL);
  }
  return fail(d, CTAGENT_E_IO, "next_view: stalled for 10 minutes");
#else
  return fail(d, CTAGENT_E_HARDWARE, "next_view: detector fault at view %llu: high-voltage arc; the scan cannot go on, "
              "run the detector self-test", (unsigned long long)v);
#endif
}
