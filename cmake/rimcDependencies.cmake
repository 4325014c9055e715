# The packages rimc's headers need; rimcConfig.cmake repeats them for consumers.
include(GNUInstallDirs)
find_package(Eigen3 3.4 REQUIRED NO_MODULE)
find_package(dnnl 2.6 REQUIRED)
find_package(OpenMP REQUIRED COMPONENTS CXX)
find_package(nlohmann_json 3.10 REQUIRED)
find_package(ZLIB REQUIRED)

# What the configure step found besides the cache's FILEPATH entries (headers in shared include
# directories), for tools/audit_deps.py: every file must come from tools/install-deps.sh.
if(PROJECT_IS_TOP_LEVEL)
  set(_rimc_found "# files found by rimc's configure step, audited by tools/audit_deps.py\n")
  if(OpenCL_INCLUDE_DIR)
    string(APPEND _rimc_found "OpenCL header=${OpenCL_INCLUDE_DIR}/CL/cl.h\n")
  endif()
  if(ZLIB_INCLUDE_DIR)
    string(APPEND _rimc_found "zlib header=${ZLIB_INCLUDE_DIR}/zlib.h\n")
  endif()
  string(APPEND _rimc_found "cmake=${CMAKE_COMMAND}\nctest=${CMAKE_CTEST_COMMAND}\n")
  file(WRITE "${PROJECT_BINARY_DIR}/rimc_found_files.txt" "${_rimc_found}")
endif()
