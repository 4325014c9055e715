#!/usr/bin/env python3
"""The coefficient table of rimc's approximate normal quantile (include/rimc/core/random.hpp,
approx_quantile_coef): for octave j = 0..22 of the tail probability q in [2^-(j+2), 2^-(j+1)),
the degree-4 polynomial in t = mantissa(q) - 1.5 that interpolates -quantile(q) at the five
Chebyshev nodes of [-1/2, 1/2]. The quantile comes from Acklam's rational approximation refined
by three Newton steps on erfc (double precision). Prints the table as C++ initialisers, one row
per power. Standard library only:  /usr/bin/python3 tools/make_quantile_table.py
"""
import math
import struct

DEGREE, OCTAVES = 4, 23


def quantile(p):
    a = [-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02, 1.383577518672690e+02,
         -3.066479806614716e+01, 2.506628277459239e+00]
    b = [-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02, 6.680131188771972e+01,
         -1.328068155288572e+01]
    c = [-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00, -2.549732539343734e+00,
         4.374664141464968e+00, 2.938163982698783e+00]
    d = [7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00]
    if p < 0.02425:
        q = math.sqrt(-2 * math.log(p))
        x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    else:
        q = p - 0.5
        r = q * q
        x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / \
            (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
    for _ in range(3):
        e = 0.5 * math.erfc(-x / math.sqrt(2)) - p
        u = e * math.sqrt(2 * math.pi) * math.exp(x * x / 2)
        x = x - u / (1 + x * u / 2)
    return x


def octave(j):
    n = DEGREE + 1
    A, y = [], []
    for i in range(n):
        t = 0.5 * math.cos(math.pi * (i + 0.5) / n)
        A.append([t ** p for p in range(n)])
        y.append(-quantile((1.5 + t) * 2.0 ** -(j + 2)))
    for col in range(n):  # Gaussian elimination with partial pivoting
        piv = max(range(col, n), key=lambda r: abs(A[r][col]))
        A[col], A[piv] = A[piv], A[col]
        y[col], y[piv] = y[piv], y[col]
        for r in range(col + 1, n):
            m = A[r][col] / A[col][col]
            for k in range(col, n):
                A[r][k] -= m * A[col][k]
            y[r] -= m * y[col]
    co = [0.0] * n
    for r in range(n - 1, -1, -1):
        co[r] = (y[r] - sum(A[r][k] * co[k] for k in range(r + 1, n))) / A[r][r]
    return co


def f32(x):
    return struct.unpack('f', struct.pack('f', x))[0]


table = [octave(j) for j in range(OCTAVES)]
for p in range(DEGREE + 1):
    print("    {" + ", ".join("%.9gf" % f32(table[j][p]) for j in range(OCTAVES)) + "},")
