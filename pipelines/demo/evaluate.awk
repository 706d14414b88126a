# Accuracy of the argmax of a prediction table against the labels of test.csv.
BEGIN { FS = "," }
FNR == 1 { next }
FILENAME ~ /test/ { label[$1] = $4; next }
{ best = 2; for (j = 3; j <= NF; j++) if ($j > $best) best = j; ok += (best - 2 == label[$1]); n++ }
END { printf "{\"accuracy\": %.6f, \"rows\": %d}\n", ok / n, n }
