#pragma once
/// \file
/// Convenience header: RRAM device configuration, weight-to-conductance
/// mapping and programming, drift and read-noise models, presets.

#include <rimc/device/device_config.hpp>
#include <rimc/device/drift.hpp>
#include <rimc/device/presets.hpp>
#include <rimc/device/programming.hpp>
