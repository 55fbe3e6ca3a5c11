// CTAGENT_COUNTS_ALLOCATIONS: 1 where a test binary may replace operator new to count what is
// allocated, 0 under AddressSanitizer, whose own operator new would meet the replacement's
// delete. A test that counts says so and checks nothing there (the release suite runs it).
#pragma once

#if defined(__SANITIZE_ADDRESS__)
#define CTAGENT_COUNTS_ALLOCATIONS 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CTAGENT_COUNTS_ALLOCATIONS 0
#endif
#endif
#ifndef CTAGENT_COUNTS_ALLOCATIONS
#define CTAGENT_COUNTS_ALLOCATIONS 1
#endif
