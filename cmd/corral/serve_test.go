package main

import "testing"

// Defaults that no request could be created with are refused at start-up,
// not reported to every client as its own mistake.
func TestPolicyConfigRefusesBadDefaults(t *testing.T) {
	for name, c := range map[string]serveConfig{
		"unknown network mode": {defaultNetwork: "opne"},
	} {
		if _, err := policyConfig(c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := policyConfig(serveConfig{defaultNetwork: "none"}); err != nil {
		t.Errorf("network none: %v", err)
	}
}
