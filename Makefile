# The smapd suite.  The README's two commands:
#   make run    install into .venv and start the demo: smap -daemon on 127.0.0.1:$(PORT), smapd, maildrop
#   make test   install what the tests need and run them
#   make deb    build the Debian package into build/deb/ and check it with lintian
PYTHON  ?= python3
VENV    := .venv
VBIN    := $(VENV)/bin
RUNDIR  := $(CURDIR)/run
PORT    ?= 2525
SOURCES := pyproject.toml README.md $(wildcard lib/smapd/*.py lib/smapd/*/*.py man/man*/* etc/* etc/*/* contrib/*/*)

VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' lib/smapd/__init__.py)
DEBDIR  := build/deb

.PHONY: run test deps venv man lint clean deb

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

# The .deb, built with Debian's own tools from a copy of the tracked files
# (so nothing of .venv/ or run/ gets in), then checked by lintian.
deb: deps
	rm -rf $(DEBDIR)
	sh tools/export-tree $(DEBDIR)/smapd-suite-$(VERSION)
	@# Debian's own python3 and tools, whatever Python comes first on PATH.
	cd $(DEBDIR)/smapd-suite-$(VERSION) && env PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -us -uc -b
	lintian --fail-on error --tag-display-limit 0 $(DEBDIR)/smapd-suite_$(VERSION)_all.deb
	@echo "built $(DEBDIR)/smapd-suite_$(VERSION)_all.deb"

# Regenerate the keyword sections of the man pages from lib/smapd/config.py.
man: venv
	$(VBIN)/python tools/mkman man/man5/*.5 man/man8/*.8

lint:
	mandoc -Tlint -W warning man/man*/*.[0-9]
	shellcheck -s sh tools/install-deps tools/export-tree $(wildcard contrib/rc.d/*) debian/*.postinst debian/*.postrm

clean:
	rm -rf $(VENV) $(RUNDIR) build *.egg-info lib/*.egg-info .pytest_cache .hypothesis
