module patchbuild.local/go

go 1.19
