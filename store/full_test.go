package store_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/store"
)

// A database that cannot grow (SQLITE_FULL, what a full disk gives) fails
// writes with errdefs.ErrInsufficientStorage, which the API answers with
// 507, not 500.
func TestFullDatabaseIsInsufficientStorage(t *testing.T) {
	db := storeOpen(t)
	ctx := context.Background()
	raw := store.RawSQL(db)
	// One connection, so the page cap below holds for every statement.
	raw.SetMaxOpenConns(1)
	var pages int
	if err := raw.QueryRowContext(ctx, "PRAGMA page_count").Scan(&pages); err != nil {
		t.Fatal(err)
	}
	if _, err := raw.ExecContext(ctx, fmt.Sprintf("PRAGMA max_page_count = %d", pages)); err != nil {
		t.Fatal(err)
	}
	var err error
	for i := 0; i < 100000 && err == nil; i++ {
		_, err = db.CreateUser(ctx, fmt.Sprintf("user-%06d", i))
	}
	if !errors.Is(err, errdefs.ErrInsufficientStorage) || errdefs.Code(err) != "insufficient_storage" {
		t.Errorf("writing to a full database: %v (code %s), want insufficient_storage", err, errdefs.Code(err))
	}
}
