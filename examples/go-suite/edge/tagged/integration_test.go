//go:build integration

package tagged

import "testing"

func TestIntegration(t *testing.T) {}
