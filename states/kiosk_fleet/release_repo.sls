{#- The kiosk release repository over HTTP: nginx serves <repo_dir> read-only
    under /kiosk-releases/ on a campus Pi (the kiosks download from it) or on
    the central master (the Pis download from it). Layout of <repo_dir>,
    written by other code: <name>/index.json, <name>/<version>/..., and
    .staging/ (never served). Files must be readable by nginx's workers
    (www-data on Debian): world-readable, or group www-data.

    Pillar (every key optional):

      kiosk_release_repo:
        repo_dir: /srv/kiosk-releases
        port: 80                  # default: the campus repo_port of the inventory, else 80
        listen: [10.20.1.2]       # addresses (no port); default on a Pi: its own
                                  # kiosk_fleet:campuses:<campus>:pis:<id>:vlans:*:source
        access_log: /var/log/nginx/kiosk-release-repo.access.log
        remove_default_site: True # Debian's "default" site listens on every address
        limit_rate: 256k          # optional: nginx's cap per connection (bytes/s; k = KiB, m = MiB),
                                  # e.g. on the master's export; empty or absent: no cap. Anything but
                                  # digits with an optional k/m fails the state (nothing is installed)

    The central master is no Pi of the inventory: give it `listen` in pillar.
    With no address at all this state fails rather than listen on 0.0.0.0.

    Files: files/kiosk-release-repo-http.conf.jinja (log_format, http level:
    /etc/nginx/conf.d/) and files/kiosk-release-repo.conf.jinja (the server
    block: /etc/nginx/sites-enabled/). The server block is checked with
    nginx -t (in a minimal main conf with the log_format) before it replaces
    the installed one; nginx is then reloaded, not restarted, so downloads in
    progress finish.

    Apply with: salt 'pi-*' state.apply kiosk_fleet.release_repo #}
{%- set conf = salt['pillar.get']('kiosk_release_repo', {}) %}
{%- set repo_dir = conf.get('repo_dir', '/srv/kiosk-releases') %}
{#- this Pi's campus: the campus of the pillar inventory that lists this minion id as a Pi (the
    pillar is computed by the master for the id it authenticated), never the campus grain, which
    the minion reports about itself #}
{%- set found = namespace(campus='', spec={}) %}
{%- for name, spec in salt['pillar.get']('kiosk_fleet:campuses', {}) | dictsort %}
{%-   if spec is mapping and opts['id'] in (spec.get('pis') or {}) %}
{%-     set found.campus = name %}{% set found.spec = spec %}
{%-   endif %}
{%- endfor %}
{#- port: the campus repo_port of the inventory (what kiosks use), else 80 #}
{%- set campus_spec = found.spec %}
{%- set port = conf.get('port', campus_spec.get('repo_port', 80)) %}
{%- set access_log = conf.get('access_log', '/var/log/nginx/kiosk-release-repo.access.log') %}
{#- nginx size syntax only: the value lands in the config file, so nothing else may pass #}
{%- set limit_rate = conf.get('limit_rate') %}
{%- set limit_rate = '' if limit_rate is none else limit_rate | string | trim %}
{%- set limit_rate_ok = limit_rate == '' or limit_rate | regex_match('^([1-9][0-9]{0,9}[kKmM]?)$') %}
{%- set http_conf = '/etc/nginx/conf.d/kiosk-release-repo-http.conf' %}
{%- set site_conf = '/etc/nginx/sites-enabled/kiosk-release-repo.conf' %}

{#- default addresses: this Pi's source address on each of its VLANs (inventory) #}
{%- set pi = campus_spec.get('pis', {}).get(opts['id'], {}) %}
{%- set addresses = conf.get('listen') or [] %}
{%- if addresses is string %}{% set addresses = [addresses] %}{% endif %}
{%- if not addresses %}
{%-   for vlan, spec in pi.get('vlans', {}) | dictsort %}
{%-     if spec.get('source') %}{% do addresses.append(spec['source']) %}{% endif %}
{%-   endfor %}
{%- endif %}
{%- set listen = [] %}
{%- for address in addresses %}
{%-   do listen.append(('[' ~ address ~ ']' if ':' in address else address) ~ ':' ~ port) %}
{%- endfor %}

{%- if not listen %}
kiosk_release_repo_needs_addresses:
  test.fail_without_changes:
    - name: >-
        release_repo: no address to listen on: set pillar kiosk_release_repo:listen, or give this Pi
        its VLAN source addresses in kiosk_fleet:campuses:<campus>:pis (pillar campus of {{ opts['id'] | json }}:
        {{ found.campus | json }})
{%- elif not limit_rate_ok %}
kiosk_release_repo_bad_limit_rate:
  test.fail_without_changes:
    - name: >-
        release_repo: kiosk_release_repo:limit_rate: {{ limit_rate | json }} is not an nginx rate
        (digits with an optional k or m, e.g. 256k; empty for no cap)
{%- else %}
kiosk_release_repo_nginx:
  pkg.installed:
    - name: nginx

kiosk_release_repo_dir:
  file.directory:
    - name: {{ repo_dir | json }}
    - makedirs: True
    - mode: '0755'

kiosk_release_repo_log_format:
  file.managed:
    - name: {{ http_conf }}
    - source: salt://kiosk_fleet/files/kiosk-release-repo-http.conf.jinja
    - template: jinja
    - mode: '0644'
    - require:
      - pkg: kiosk_release_repo_nginx

kiosk_release_repo_site:
  file.managed:
    - name: {{ site_conf }}
    - source: salt://kiosk_fleet/files/kiosk-release-repo.conf.jinja
    - template: jinja
    - mode: '0644'
    - context:
        listen: {{ listen | json }}
        repo_dir: {{ repo_dir | json }}
        access_log: {{ access_log | json }}
        limit_rate: {{ limit_rate | json }}
    # the candidate file ($1) alone in a main conf with the log_format: nginx -t
    - check_cmd: >-
        /bin/sh -c 'd=$(mktemp -d) || exit 1;
        printf "pid %s/nginx.pid;\nevents {}\nhttp {\ninclude %s;\ninclude %s;\n}\n"
        "$d" {{ http_conf }} "$1" > "$d/nginx.conf";
        nginx -t -q -p "$d/" -c "$d/nginx.conf"; rc=$?; rm -rf "$d"; exit $rc' kiosk-release-repo-check
    # the candidate's directory (default: the minion's cwd); nothing includes /etc/nginx/*
    - tmp_dir: /etc/nginx
    - require:
      - file: kiosk_release_repo_log_format
      - file: kiosk_release_repo_dir
{%- if conf.get('remove_default_site', True) %}

kiosk_release_repo_no_default_site:
  file.absent:
    - name: /etc/nginx/sites-enabled/default
    - require:
      - pkg: kiosk_release_repo_nginx
{%- endif %}

kiosk_release_repo_service:
  service.running:
    - name: nginx
    - enable: True
    - reload: True
    - watch:
      - file: kiosk_release_repo_log_format
      - file: kiosk_release_repo_site
{%- if conf.get('remove_default_site', True) %}
      - file: kiosk_release_repo_no_default_site
{%- endif %}
{%- endif %}
