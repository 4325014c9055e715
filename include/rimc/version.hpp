#pragma once
/// \file
/// rimc's version (kept in step with project(VERSION) in CMakeLists.txt by a test).

/// Major version number.
#define RIMC_VERSION_MAJOR 0
/// Minor version number.
#define RIMC_VERSION_MINOR 1
/// Patch version number.
#define RIMC_VERSION_PATCH 0

namespace rimc {
/// "major.minor.patch".
inline constexpr const char* version_string = "0.1.0";
}  // namespace rimc
