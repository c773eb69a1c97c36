# goflags.sh: sourced by test.sh. pgo_goflags prints GOFLAGS as the tests
# are to be built: cmd/mote/default.pgo (profile-guided optimisation,
# bench/README.md, h-pgo) applies to every build of cmd/mote, its test
# binary and the binaries tests build included: that would compile what it
# imports twice more (race and plain, with the profile; about 2-3 min more
# on 2 cores). PGO changes the code the compiler emits, not what it does,
# so the tests build without it (-pgo=off); PGO=auto tests the PGO build
# instead. A -pgo the caller's GOFLAGS already has is left as it is: the
# go command takes the last of two, so one appended after it overrode it
# (review h-rv9, RV9-2: GOFLAGS=-pgo=auto tested the plain build).
pgo_goflags() {
	case " ${GOFLAGS:-} " in
	*" -pgo="* | *" --pgo="*) printf '%s\n' "$GOFLAGS" ;;
	*) printf '%s\n' "${GOFLAGS:+$GOFLAGS }-pgo=${PGO:-off}" ;;
	esac
}
