#pragma once

#include <cstdint>

namespace scaled_add_cpu {
void scaled_add_float(float *out, const float *x, const float *y, float alpha, int64_t n);
}
