# The Debian package `ctagent` (CPack DEB): the agent as a hardened systemd service.
# Included last from the top-level CMakeLists.txt, so every install rule is known by then.
# scripts/package configures build/package with the firmware settings, prefix /usr and
# CTAGENT_INSTALL_SERVICE=ON, and runs cpack; docs/oem-integration.md, "Installing as a service".
option(CTAGENT_INSTALL_SERVICE
  "Install the systemd unit, /etc/ctagent/ctagent.json and the Debian doc files, and enable cpack (the .deb's layout; needs CMAKE_INSTALL_PREFIX=/usr)"
  OFF)
set(CTAGENT_DEB_REVISION "1" CACHE STRING "Debian revision: the package's version is <project version>-<revision>")
set(CTAGENT_DEB_MAINTAINER "ctagent maintainers <ctagent-maintainers@example.org>" CACHE STRING
  "Maintainer field of the .deb (an OEM puts its own)")

if(NOT CTAGENT_INSTALL_SERVICE)
  return()
endif()
if(NOT CMAKE_INSTALL_PREFIX STREQUAL "/usr")
  # The unit's ExecStart and the maintainer scripts name /usr/bin/ctagent.
  message(FATAL_ERROR "CTAGENT_INSTALL_SERVICE=ON needs CMAKE_INSTALL_PREFIX=/usr (found ${CMAKE_INSTALL_PREFIX})")
endif()
include(GNUInstallDirs)

set(pkg ${PROJECT_SOURCE_DIR}/packaging)
# Debian 12 ships units in /lib/systemd/system (usrmerge moves them later); configuration and the
# unit live outside the prefix, hence the absolute destinations.
install(FILES ${pkg}/systemd/ctagent.service DESTINATION /lib/systemd/system)
install(FILES ${pkg}/ctagent.json DESTINATION /etc/ctagent)
install(FILES ${pkg}/debian/copyright DESTINATION ${CMAKE_INSTALL_DOCDIR})

# changelog.Debian.gz: Debian policy 12.7 wants it compressed with gzip -9n (no name, no time
# stamp: the package is reproducible).
set(CTAGENT_DEB_VERSION "${PROJECT_VERSION}-${CTAGENT_DEB_REVISION}")
configure_file(${pkg}/debian/changelog.in ${PROJECT_BINARY_DIR}/packaging/changelog.Debian @ONLY)
find_program(CTAGENT_GZIP gzip REQUIRED)
add_custom_command(OUTPUT ${PROJECT_BINARY_DIR}/packaging/changelog.Debian.gz
  COMMAND ${CTAGENT_GZIP} -9nc changelog.Debian > changelog.Debian.gz
  DEPENDS ${PROJECT_BINARY_DIR}/packaging/changelog.Debian
  WORKING_DIRECTORY ${PROJECT_BINARY_DIR}/packaging
  VERBATIM)
add_custom_target(ctagent_deb_changelog ALL DEPENDS ${PROJECT_BINARY_DIR}/packaging/changelog.Debian.gz)
install(FILES ${PROJECT_BINARY_DIR}/packaging/changelog.Debian.gz DESTINATION ${CMAKE_INSTALL_DOCDIR})

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME ctagent)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "${CTAGENT_DEB_MAINTAINER}")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_RELEASE ${CTAGENT_DEB_REVISION})
set(CPACK_DEBIAN_PACKAGE_MAINTAINER "${CTAGENT_DEB_MAINTAINER}")
set(CPACK_DEBIAN_PACKAGE_SECTION misc)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "${PROJECT_DESCRIPTION}")
set(CPACK_DEBIAN_PACKAGE_DESCRIPTION "ctagent runs on a CT scanner's terminal: it reads sinograms through a detector
driver, compresses them losslessly into checksummed chunks, keeps them in a
durable local spool until the imaging center has confirmed them, uploads them
with resumable tus uploads over HTTPS, and sends the reconstructed images back
to the scanner console by DICOM C-STORE.
.
This package runs the daemon as the systemd service ctagent.service (user
ctagent, spool in /var/lib/ctagent) and ships the driver conformance kit.")
# Library dependencies are computed by dpkg-shlibdeps from the binaries; adduser is for postinst.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "adduser")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
  ${pkg}/debian/conffiles ${pkg}/debian/postinst ${pkg}/debian/prerm ${pkg}/debian/postrm)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_DEBIAN_COMPRESSION_TYPE xz)
include(CPack)
