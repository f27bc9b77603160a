module wit_component

go 1.25

require go.bytecodealliance.org/pkg v0.4.0

// The Go module proxy does not serve go.bytecodealliance.org; the same sources (v0.4.0) ship
// inside the wit-bindgen-go crate, and build.sh copies them to ./pkg next to this file.
replace go.bytecodealliance.org/pkg => ./pkg
