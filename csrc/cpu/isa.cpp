#include "isa.h"

#include <cstdlib>

namespace ck::cpu {

Isa cpu_isa() {
  static const Isa isa = select_isa(std::getenv("CK_CPU_ISA"));
  return isa;
}

}  // namespace ck::cpu
