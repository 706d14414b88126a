# Synthetic 2-D, 3-class data set: Gaussian blobs, deterministic for a seed.
# Writes train.csv and test.csv (id,x,y,label) into the directory `out`.
function gauss() { return sqrt(-2 * log(1 - rand())) * cos(6.283185307 * rand()) }
BEGIN {
    srand(seed)
    cx[0] = 0; cy[0] = 0; cx[1] = 3; cy[1] = 0; cx[2] = 1.5; cy[2] = 2.6
    print "id,x,y,label" > (out "/train.csv")
    print "id,x,y,label" > (out "/test.csv")
    for (i = 0; i < n_train + n_test; i++) {
        c = i % 3
        f = (i < n_train) ? "/train.csv" : "/test.csv"
        printf "s%05d,%.4f,%.4f,%d\n", i, cx[c] + noise * gauss(), cy[c] + noise * gauss(), c > (out f)
    }
}
