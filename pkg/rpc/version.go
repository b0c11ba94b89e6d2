package rpc

import (
	"strconv"
	"strings"
)

// parseVersion splits "X.Y[.Z]" into numbers; missing parts are 0.
func parseVersion(v string) (major, minor, rev int, ok bool) {
	parts := strings.Split(v, ".")
	if len(parts) == 0 || len(parts) > 3 {
		return 0, 0, 0, false
	}
	nums := [3]int{}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return 0, 0, 0, false
		}
		nums[i] = n
	}
	return nums[0], nums[1], nums[2], true
}

// versionIsCompatible implements oslo.messaging's _utils.version_is_compatible:
// the same major, and the requested minor (then revision) not newer than the
// endpoint's.
func versionIsCompatible(imp, requested string) bool {
	iMaj, iMin, iRev, ok1 := parseVersion(imp)
	rMaj, rMin, rRev, ok2 := parseVersion(requested)
	if !ok1 || !ok2 {
		return false
	}
	if iMaj != rMaj {
		return false
	}
	if rMin > iMin {
		return false
	}
	if rMin == iMin && rRev > iRev {
		return false
	}
	return true
}
