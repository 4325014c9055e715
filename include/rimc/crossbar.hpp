#pragma once
/// \file
/// Convenience header: crossbar tiles, tiled arrays, periphery (DAC/ADC,
/// noise), analog conv2d / linear layers and drift compensation.

#include <rimc/crossbar/analog_layers.hpp>
#include <rimc/crossbar/compensation.hpp>
#include <rimc/crossbar/ir_drop.hpp>
#include <rimc/crossbar/periphery.hpp>
#include <rimc/crossbar/tile.hpp>
#include <rimc/crossbar/tiled_array.hpp>
