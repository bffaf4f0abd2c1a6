module example.com/go-suite

go 1.19
