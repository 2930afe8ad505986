#!/usr/bin/env bash
# The per-instruction-set kernel objects define nothing outside their own namespaces. A template or
# inline function from a library header instantiated in tile_avx512.cpp would be compiled with AVX-512,
# emitted as a weak symbol, and the linker could pick that copy for code that runs on any CPU: an
# illegal instruction on an AVX2 machine, far from its cause. (nn/kernels/tile_simd.inc says why.)
# Usage: kernel_symbols.sh OBJECT[:OBJECT...]
set -euo pipefail
IFS=: read -r -a objects <<<"$1"
[ "${#objects[@]}" -ge 2 ] || { echo "FAIL: expected the avx2 and avx512 objects, got: $1"; exit 1; }
status=0
for object in "${objects[@]}"; do
  case $object in
    *avx512_vnni*) ns=kernels_avx512_vnni ;;
    *avx512*) ns=kernels_avx512 ;;
    *avx2*) ns=kernels_avx2 ;;
    *) echo "FAIL: $object is none of the avx2, avx512 and avx512_vnni kernel objects"; exit 1 ;;
  esac
  defined=$(nm -C --defined-only "$object" | awk '$2 ~ /^[TtWwVvDdBbRr]$/ { $1 = ""; $2 = ""; print substr($0, 3) }')
  [ -n "$defined" ] || { echo "FAIL: $object defines nothing"; exit 1; }
  # Local labels and the sanitizers' module constructors are not visible to other objects: only
  # external (upper-case) and weak symbols matter. Type information (_ZTI, _ZTS: data, no instructions)
  # is what UBSan's function check emits for the kernels' own signatures.
  # Judged on mangled names: toptag::kernels_avx2::... is _ZN6toptag12kernels_avx2... (_ZNK for const
  # members), whatever its return type; a library template over our types would start _ZNSt or _ZSt.
  # _ZZN6toptag...: an entity local to one of our functions (a lambda's operator(), which an
  # unoptimised or sanitizer build emits out of line), named by that function: ours too.
  prefix="_ZN6toptag${#ns}$ns\|_ZNK6toptag${#ns}$ns\|_ZZN6toptag${#ns}$ns\|_ZZNK6toptag${#ns}$ns"
  stray=$(nm --defined-only "$object" | awk '$2 ~ /^[TWVDBR]$/ { print $3 }' \
    | grep -v "^\($prefix\)" | grep -v "^_ZT[IS]\|^__odr_asan\|^__asan\|^__sancov\|^asan\.\|^sancov\." | c++filt || true)
  if [ -n "$stray" ]; then
    echo "FAIL: $object defines symbols outside toptag::$ns:"
    echo "$stray"
    status=1
  else
    echo "$(basename "$object"): $(echo "$defined" | wc -l) symbols, all in toptag::$ns"
  fi
done
exit $status
