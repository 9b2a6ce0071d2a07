{#- The campus runtime on a Pi: its salt-MASTER runs the campus reconciler from its own
    schedule: (not the minion's: a minion schedule does not start until a master answers,
    and does not catch up). docs/campus.md.

    - <master_config_dir>/kiosk_campus.conf (master.d): the kiosk_campus: settings and
        schedule:
          kiosk_campus_probe: kiosk_campus.probe  every probe_seconds (20)
          kiosk_campus_tick:  kiosk_campus.tick   every tick_s (5): a reconcile at each schedule
                              transition (on the second) and at least every reconcile_s (60)
      both maxrunning 1 (a slow run is never started twice) and run_on_start (a Pi back
      from a power cut brings its campus to the state it should be in now, at once).
    - kiosk_campus:dir (0700: calendar, outbox, reconciler state) and <repo_dir>/campus
      (0755: the signed status.json and calendar.json nginx serves to the peers).
    - salt-master restarted when the snippet changed, restart_delay seconds later through
      a systemd timer, as kiosk_fleet.pi_master does (the job applying this state returns
      through this very master).

    Settings (minion config, then pillar; config.get), all optional but campus and the
    verify keys (the Pi's pillar has both: its kiosk_fleet slice, kiosk_release:verify_key):
      kiosk_campus:
        dir: /var/lib/kiosk_fleet/campus
        repo_dir: /srv/kiosk-releases   # pillar kiosk_release_repo:repo_dir (what nginx serves) wins
        probe_seconds: 20           # 5-60; with stale_s it bounds the failover: stale_s + probe_seconds <= 60
        tick_s: 5                   # 2-60 whole seconds
        reconcile_s: 60             # a full reconcile at least this often
        stale_s: 30                 # stale_s + probe_seconds <= 60 (refused otherwise); any other
                                    # kiosk_campus setting (docs/campus.md) is passed through
        textfile_dir: /var/lib/prometheus/node-exporter
      kiosk_fleet:
        master_config_dir: /etc/salt/master.d
        restart: True
        restart_delay: 10

    Apply with: salt 'pi-*' state.apply kiosk_fleet.campus #}
{%- set conf = salt['config.get']('kiosk_campus', {}) or {} %}
{%- set conf_dir = salt['config.get']('kiosk_fleet:master_config_dir', '/etc/salt/master.d') %}
{%- set restart = salt['config.get']('kiosk_fleet:restart', True) %}
{%- set restart_delay = salt['config.get']('kiosk_fleet:restart_delay', 10) %}
{%- set fleet = salt['pillar.get']('kiosk_fleet', {}) %}
{%- set campuses = fleet.get('campuses', {}) if fleet is mapping else {} %}
{%- set ns = namespace(campus=conf.get('campus')) %}
{%- for name, spec in campuses.items() if not ns.campus and spec is mapping and grains['id'] in spec.get('pis', {}) %}
{%-   set ns.campus = name %}
{%- endfor %}
{%- set verify_key = conf.get('verify_key') or salt['pillar.get']('kiosk_release:verify_key', []) %}
{%- set probe_seconds = conf.get('probe_seconds', 20) %}
{%- set tick_s = conf.get('tick_s', 5) %}
{%- set stale_s = conf.get('stale_s', 30) %}
{%- set dir = conf.get('dir', '/var/lib/kiosk_fleet/campus') %}
{#- the folder nginx serves (kiosk_fleet.release_repo's pillar) first: the peers fetch <repo_dir>/campus/ from it #}
{%- set repo_dir = salt['pillar.get']('kiosk_release_repo:repo_dir') or conf.get('repo_dir') or '/srv/kiosk-releases' %}
{%- set settings = {} %}
{%- for key, value in conf.items() if key not in ('probe_seconds', 'master_config') %}
{%-   do settings.update({key: value}) %}
{%- endfor %}
{#- probe_s: the runner reads a peer status as up to one probe interval old (peer clock confirmation) #}
{%- do settings.update({'dir': dir, 'repo_dir': repo_dir, 'campus': ns.campus, 'pi': grains['id'],
                        'verify_key': verify_key, 'probe_s': probe_seconds}) %}
{%- set seconds_ok = probe_seconds is integer and probe_seconds is not boolean and 5 <= probe_seconds <= 60
                     and tick_s is integer and tick_s is not boolean and 2 <= tick_s <= 60 %}
{#- a dead leader is seen stale_s after its last status, itself up to one probe interval old #}
{%- set stale_ok = stale_s is number and stale_s is not boolean and stale_s + probe_seconds <= 60 %}
{%- set delay_ok = restart_delay is integer and restart_delay is not boolean and 1 <= restart_delay <= 3600 %}

{%- if not ns.campus or not verify_key %}

kiosk_campus_settings:
  test.fail_without_changes:
    - name: {{ ('kiosk_campus: ' ~ ('no campus for ' ~ grains['id'] ~ ' in the kiosk_fleet pillar'
                                     if not ns.campus else 'no verify_key (pillar kiosk_release:verify_key)')
                ~ '; the campus reconciler is not configured') | json }}
{%- elif not seconds_ok %}

kiosk_campus_settings:
  test.fail_without_changes:
    - name: "kiosk_campus: probe_seconds (5-60) and tick_s (2-60) must be whole numbers of seconds"
{%- elif not stale_ok %}

kiosk_campus_settings:
  test.fail_without_changes:
    - name: {{ ('kiosk_campus: stale_s + probe_seconds (' ~ (stale_s | string | truncate(20)) ~ ' + ' ~ probe_seconds
                ~ ') must be at most 60 s: leadership moves within that after a Pi dies') | json }}
{%- else %}

kiosk_campus_dir:
  file.directory:
    - name: {{ dir | json }}
    - mode: '0700'
    - makedirs: True

kiosk_campus_served:
  file.directory:
    - name: {{ (repo_dir ~ '/campus') | json }}
    - mode: '0755'
    - makedirs: True

kiosk_campus_master_config:
  file.serialize:
    - name: {{ (conf_dir ~ '/kiosk_campus.conf') | json }}
    - serializer: yaml
    - makedirs: True
    - mode: '0600'
    - dataset:
        kiosk_campus: {{ settings | json }}
        schedule:
          kiosk_campus_probe:
            function: kiosk_campus.probe
            seconds: {{ probe_seconds }}
            maxrunning: 1
            run_on_start: True
          kiosk_campus_tick:
            function: kiosk_campus.tick
            seconds: {{ tick_s }}
            maxrunning: 1
            run_on_start: True
    - require:
      - file: kiosk_campus_dir
      - file: kiosk_campus_served

{%-   if restart and not delay_ok %}

kiosk_campus_master_restart:
  test.fail_without_changes:
    - name: {{ ('restart_delay: ' ~ (restart_delay | string | truncate(40)) ~ ' is not a number of seconds (1-3600); salt-master not restarted') | json }}
{%-   elif restart %}

kiosk_campus_master_restart:
  module.run:
    - cmd.run_all:
      - cmd: {{ ['systemd-run', '--on-active=' ~ restart_delay, '--timer-property=AccuracySec=1s',
                 'systemctl', 'restart', 'salt-master'] | json }}
      - python_shell: False
    - onchanges:
      - file: kiosk_campus_master_config
{%-   endif %}
{%- endif %}
