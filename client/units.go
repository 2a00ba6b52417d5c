package client

import (
	"time"

	"github.com/corralhq/corral/policy"
)

func durationOf(d time.Duration) policy.Duration { return policy.Duration(d) }
