#pragma once
// The adapters the PEFT fuzz harness loads into and its seeds are saved
// from: the unit tests' two-layer network with a rank-2 conv2d adapter and a
// rank-4 linear one (DoRA).

#include "../unit/test_adapters.hpp"

namespace rimc::fuzz {

using peft_adapters = test::adapted_pair<dora_adapter>;

}  // namespace rimc::fuzz
