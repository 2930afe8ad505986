# median(list): the median of the numbers in a space-separated list ("" for an empty one). Shared by
# bench/compare.sh and bench/compare_quantized.sh, which put this file's text before their programs.
function median(list,   v, n, i, j, tmp) {
  n = split(list, v, " ")
  if (n == 0) return ""
  for (i = 2; i <= n; i++) for (j = i; j > 1 && v[j - 1] + 0 > v[j] + 0; j--) { tmp = v[j]; v[j] = v[j - 1]; v[j - 1] = tmp }
  return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
}
