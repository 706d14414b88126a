# Nearest-centroid "training" on every fold but `fold`; validation accuracy on `fold`.
# Reads folds.csv (id,fold) then train.csv; writes model.csv and metrics.json into `out`.
BEGIN { FS = "," }
FNR == 1 { next }
FILENAME ~ /folds/ { fold_of[$1] = $2; next }
fold_of[$1] != fold { sx[$4] += $2; sy[$4] += $3; n[$4]++; next }
{ vid[++nv] = $1; vx[nv] = $2; vy[nv] = $3; vl[nv] = $4 }
END {
    print "label,x,y" > (out "/model.csv")
    for (c in n) { mx[c] = sx[c] / n[c]; my[c] = sy[c] / n[c]; printf "%d,%.6f,%.6f\n", c, mx[c], my[c] > (out "/model.csv") }
    for (i = 1; i <= nv; i++) {
        best = -1
        for (c in n) { d = (vx[i] - mx[c])^2 + (vy[i] - my[c])^2; if (best < 0 || d < bd) { best = c; bd = d } }
        ok += (best == vl[i])
    }
    printf "{\"val_accuracy\": %.6f, \"val_rows\": %d}\n", (nv ? ok / nv : 0), nv > (out "/metrics.json")
}
