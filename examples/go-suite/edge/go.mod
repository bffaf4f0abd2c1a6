module example.com/go-edge

go 1.19
