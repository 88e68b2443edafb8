/* fleet-fix: the fleet benchmark's rlivepatch patch. fleet_value(x) returns x * 3 + 1. */
#include <rlivepatch.h>

static int fleet_value_v2(int x)
{
	return x * 3 + 1;
}

RLIVEPATCH_FUNC_IN("libfleet.so", fleet_value, fleet_value_v2);
RLIVEPATCH_NAME("fleet-fix");
