# Mean of several prediction tables with the same ids and columns, in id order.
BEGIN { FS = ","; OFS = "," }
FNR == 1 { header = $0; nfiles++; next }
{ if (!($1 in seen)) { seen[$1] = 1; order[++n] = $1 } for (j = 2; j <= NF; j++) s[$1, j] += $j; cols = NF }
END {
    print header
    for (i = 1; i <= n; i++) { line = order[i]; for (j = 2; j <= cols; j++) line = line sprintf(",%.6f", s[order[i], j] / nfiles); print line }
}
