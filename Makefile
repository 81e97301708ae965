# The smapd suite.  The README's two commands:
#   make run    install into .venv and start the demo: smap -daemon on 127.0.0.1:$(PORT), smapd, maildrop
#   make test   install what the tests need and run them
PYTHON  ?= python3
VENV    := .venv
VBIN    := $(VENV)/bin
RUNDIR  := $(CURDIR)/run
PORT    ?= 2525
SOURCES := setup.py README.md $(wildcard bin/* lib/smapd/*.py lib/smapd/*/*.py man/man*/*)

.PHONY: run test deps venv man lint clean

venv: $(VENV)/.installed

$(VENV)/.deps: requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(VBIN)/python -m pip install -q --upgrade pip
	$(VBIN)/python -m pip install -q -r requirements-test.txt python-daemon setproctitle pyopenssl dnspython
	touch $@

$(VENV)/.installed: $(VENV)/.deps $(SOURCES)
	$(VBIN)/python -m pip install -q --force-reinstall --no-deps .
	touch $@

# The demo's table, with absolute paths under run/ and the accounts that
# work for whoever runs it.
$(RUNDIR)/netperm-table: etc/demo/netperm-table.in
	mkdir -p $(RUNDIR)/spool/bad
	@if [ "$$(id -u)" = 0 ]; then u=nobody; g=$$(getent group nogroup >/dev/null && echo nogroup || echo nobody); \
	    chown "$$u:$$g" $(RUNDIR)/spool $(RUNDIR)/spool/bad; du=root; dg=root; \
	else u=$$(id -un); g=$$(id -gn); du=$$u; dg=$$g; fi; \
	sed -e "s|@RUN@|$(RUNDIR)|g" -e "s|@USER@|$$u|g" -e "s|@GROUP@|$$g|g" \
	    -e "s|@DUSER@|$$du|g" -e "s|@DGROUP@|$$dg|g" \
	    -e "s|@PORT@|$(PORT)|g" -e "s|@VBIN@|$(CURDIR)/$(VBIN)|g" \
	    etc/demo/netperm-table.in > $@

run: venv $(RUNDIR)/netperm-table
	$(VBIN)/smapctl check --config $(RUNDIR)/netperm-table
	@if [ "$$(id -u)" != 0 ]; then \
	    echo "*** WARNING: not root: smap cannot chroot or drop privileges; this demo runs it as $$(id -un)."; \
	    echo "*** Never run smap like this in production."; fi
	@echo
	@echo "smap -daemon listens on 127.0.0.1:$(PORT) (a prefork master and its children); smapd"
	@echo "hands each spooled message to 'smapctl maildrop', which delivers into $(RUNDIR)/maildir/."
	@echo "Send a message:"
	@echo "    swaks --server 127.0.0.1:$(PORT) --from you@example.org --to postmaster@example.org"
	@echo "and read it in $(RUNDIR)/maildir/postmaster@example.org/new/ ('$(VBIN)/smapctl queue"
	@echo "--config $(RUNDIR)/netperm-table' lists what waits). Both log below. Ctrl-C stops."
	@echo
	@$(VBIN)/smapd -d $$([ "$$(id -u)" = 0 ] && echo --allow-root) --config $(RUNDIR)/netperm-table & \
	smapd=$$!; trap 'kill $$smapd 2>/dev/null; wait $$smapd' EXIT INT TERM; \
	$(VBIN)/smap -daemon -d --config $(RUNDIR)/netperm-table

deps:
	sh tools/install-deps

test: deps venv
	PATH="$(CURDIR)/$(VBIN):$$PATH" $(VBIN)/python -m pytest $(PYTEST_ARGS)

# Regenerate the keyword sections of the man pages from lib/smapd/config.py.
man: venv
	$(VBIN)/python tools/mkman man/man5/*.5 man/man8/*.8

lint:
	mandoc -Tlint -W warning man/man*/*.[0-9]
	shellcheck -s sh tools/install-deps $(wildcard contrib/rc.d/*)

clean:
	rm -rf $(VENV) $(RUNDIR) build *.egg-info lib/*.egg-info .pytest_cache .hypothesis
