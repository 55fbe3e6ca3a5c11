/*
 * A deliberately faulty driver for the conformance kit's own tests: the C example with one
 * fault injected, chosen at build time by BROKEN_FAULT:
 *   1 gap        view 5 is skipped (sequence numbers 0..4, 6, 7, ...)
 *   2 duplicate  view 5 is reported twice (0..5, 5, 7, ...)
 *   3 abi        claims driver ABI 2.x
 *   4 no_abort   ignores abort(): a blocked next_view() waits for its view
 */
#if BROKEN_FAULT == 1
#define EXAMPLE_REPORTED_SEQUENCE(sequence) ((sequence) >= 5 ? (sequence) + 1 : (sequence))
#define EXAMPLE_NAME "broken_gap"
#elif BROKEN_FAULT == 2
#define EXAMPLE_REPORTED_SEQUENCE(sequence) ((sequence) == 6 ? 5 : (sequence))
#define EXAMPLE_NAME "broken_duplicate"
#elif BROKEN_FAULT == 3
#define EXAMPLE_ABI_MAJOR 2u
#define EXAMPLE_NAME "broken_abi"
#elif BROKEN_FAULT == 4
#define EXAMPLE_HONOURS_ABORT 0
#define EXAMPLE_NAME "broken_no_abort"
#else
#error "define BROKEN_FAULT to 1 (gap), 2 (duplicate), 3 (abi) or 4 (no_abort)"
#endif

#include "../c_example/c_example_driver.c"
