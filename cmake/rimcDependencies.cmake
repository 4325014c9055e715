# The packages rimc's headers need; rimcConfig.cmake repeats them for consumers.
include(GNUInstallDirs)
find_package(Eigen3 3.4 REQUIRED NO_MODULE)
find_package(dnnl 2.6 REQUIRED)
find_package(OpenMP REQUIRED COMPONENTS CXX)
find_package(nlohmann_json 3.10 REQUIRED)
find_package(ZLIB REQUIRED)
