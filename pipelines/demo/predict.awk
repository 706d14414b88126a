# Class probabilities (softmax of negative squared distance to each centroid)
# for every row of test.csv, from model.csv. Writes id,p0,p1,p2 to stdout.
BEGIN { FS = ","; print "id,p0,p1,p2" }
FNR == 1 { next }
FILENAME ~ /model/ { mx[$1] = $2; my[$1] = $3; next }
{
    z = 0
    for (c = 0; c < 3; c++) { e[c] = exp(-((($2 - mx[c])^2 + ($3 - my[c])^2)) / temperature); z += e[c] }
    printf "%s,%.6f,%.6f,%.6f\n", $1, e[0] / z, e[1] / z, e[2] / z
}
