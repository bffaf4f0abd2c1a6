// Package tagged has a test behind a build tag.
package tagged
