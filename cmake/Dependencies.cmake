# Every dependency comes from a Debian 12 package. When one is missing, say which package to install.
function(ctagent_require found what package)
  if(NOT ${found})
    message(FATAL_ERROR
      "ctagent needs ${what}, which was not found.\n"
      "On Debian 12 install it with:  apt-get install ${package}\n"
      "(scripts/bootstrap installs every build dependency).")
  endif()
endfunction()

find_package(Threads REQUIRED)
find_package(PkgConfig)
ctagent_require(PkgConfig_FOUND "pkg-config" "pkg-config")

find_package(Boost 1.74 QUIET)
ctagent_require(Boost_FOUND "Boost.Asio (Boost headers >= 1.74)" "libboost-dev")

find_package(CURL QUIET)
ctagent_require(CURL_FOUND "libcurl" "libcurl4-openssl-dev")

find_package(OpenSSL 1.1.1 QUIET)
ctagent_require(OPENSSL_FOUND "OpenSSL" "libssl-dev")

pkg_check_modules(ZSTD QUIET IMPORTED_TARGET libzstd>=1.4)
ctagent_require(ZSTD_FOUND "zstd (libzstd >= 1.4)" "libzstd-dev")

find_package(nlohmann_json 3.9 QUIET)
ctagent_require(nlohmann_json_FOUND "nlohmann/json" "nlohmann-json3-dev")

find_package(DCMTK QUIET CONFIG)
ctagent_require(DCMTK_FOUND "DCMTK" "libdcmtk-dev")
# Debian's DCMTK package names zlib, libxml2 and libwrap by absolute host path; in a sysroot
# cross build those must point into the sysroot instead (docs/cross-compiling.md).
if(CMAKE_SYSROOT AND DCMTK_FOUND)
  foreach(dcmtk_lib IN LISTS DCMTK_LIBRARIES)
    if(TARGET DCMTK::${dcmtk_lib})
      get_target_property(dcmtk_link DCMTK::${dcmtk_lib} INTERFACE_LINK_LIBRARIES)
      if(dcmtk_link)
        list(TRANSFORM dcmtk_link REPLACE "^/(usr/)?lib/" "${CMAKE_SYSROOT}/\\1lib/")
        set_target_properties(DCMTK::${dcmtk_lib} PROPERTIES INTERFACE_LINK_LIBRARIES "${dcmtk_link}")
      endif()
    endif()
  endforeach()
endif()

if(CTAGENT_BUILD_TESTS)
  find_package(Catch2 2 QUIET)
  ctagent_require(Catch2_FOUND "Catch2" "catch2")
endif()
