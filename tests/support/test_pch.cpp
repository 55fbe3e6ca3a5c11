// The precompiled header's own unit (tests/CMakeLists.txt, ctagent_test_pch): the test
// programs reuse the header this target compiles.
