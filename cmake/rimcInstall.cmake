# install(): headers, the exported INTERFACE target and a relocatable package config.
include(CMakePackageConfigHelpers)

install(DIRECTORY "${PROJECT_SOURCE_DIR}/include/rimc" DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}")
install(TARGETS rimc EXPORT rimcTargets)

set(RIMC_CMAKE_INSTALL_DIR "${CMAKE_INSTALL_DATADIR}/cmake/rimc")
install(EXPORT rimcTargets NAMESPACE rimc:: DESTINATION "${RIMC_CMAKE_INSTALL_DIR}")

configure_package_config_file("${PROJECT_SOURCE_DIR}/cmake/rimcConfig.cmake.in"
  "${PROJECT_BINARY_DIR}/rimcConfig.cmake"
  INSTALL_DESTINATION "${RIMC_CMAKE_INSTALL_DIR}")
write_basic_package_version_file("${PROJECT_BINARY_DIR}/rimcConfigVersion.cmake"
  COMPATIBILITY SameMinorVersion ARCH_INDEPENDENT)
install(FILES "${PROJECT_BINARY_DIR}/rimcConfig.cmake" "${PROJECT_BINARY_DIR}/rimcConfigVersion.cmake"
  DESTINATION "${RIMC_CMAKE_INSTALL_DIR}")
