#pragma once
/// \file
/// The calibration cost model: cost_model (energy, latency, endurance
/// figures), layer_geometry (layer shapes; nn/geometry.hpp takes them from a
/// network), SRAM footprints, and the cost of re-programming, in-RRAM
/// backprop and DoRA-in-SRAM calibration.

#include <rimc/cost/calibration_cost.hpp>
#include <rimc/cost/cost_model.hpp>
#include <rimc/cost/layer_geometry.hpp>
#include <rimc/cost/sram.hpp>
